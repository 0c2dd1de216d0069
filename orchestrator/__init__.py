"""The wiring: CLI, Ray Tune/Train, MLflow. The science lives in `trainables/`."""
