"""The science: models, data, training loops. Imports neither ray nor mlflow."""
