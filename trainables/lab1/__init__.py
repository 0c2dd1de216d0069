"""Lab 1: MLPs, CNNs, residual connections, transfer learning and class activation maps.

Imports nothing on its own: a trial process loads only the modules its study names."""
