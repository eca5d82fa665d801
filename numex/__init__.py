"""numex: staged promotion of machine-learning models.

Experiment → parallel routine → operations, the way a weather service promotes
a new forecast model. See DESIGN.md for the glossary and the flow.
"""

__version__ = "0.1.0"
