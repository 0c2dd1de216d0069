"""Lab 4: OOD detection, adversarial attacks and adversarial training.

Imports nothing on its own: a trial process loads only the modules its study names."""
