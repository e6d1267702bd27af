"""Scoring: CLIP encoders (ours, open_clip's), the compact CLIP's training, embeddings, degradations and the
aesthetic/quality head."""
