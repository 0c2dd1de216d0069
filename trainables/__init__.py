"""The science, importing neither ray nor mlflow: the shared core (config, recipe, context, data, hub,
models, training, plots) and one package per lab (lab1, lab3, lab4), each importing the core only."""
