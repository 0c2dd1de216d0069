"""What each study searches: define-by-run functions of an Optuna trial, returning None.

Keys are config field names of the study's trainable. No computation in here: OptunaSearch calls
these in the driver for every new trial.
"""
