-- numex's and MLflow's databases are kept separate.
CREATE DATABASE mlflow OWNER numex;
