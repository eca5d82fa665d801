"""Flask extensions, created unbound and initialised in the factory."""

from flask_bootstrap import Bootstrap5
from flask_wtf.csrf import CSRFProtect

bootstrap = Bootstrap5()
csrf = CSRFProtect()
