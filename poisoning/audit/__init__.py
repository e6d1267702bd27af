"""The model-level opt-out audit (`optout evaluate`): does honouring opt-outs remove an artist's style from a model?
The style probe, memorisation measures and the figure."""
