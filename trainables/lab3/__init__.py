"""Lab 3: Transformers: DistilBERT sentiment (frozen, fine-tune, LoRA) and CLIP (zero-shot, LoRA).

Imports nothing on its own: a trial process loads only the modules its study names."""
