"""Speech recognition: a FastConformer encoder with a CTC head (HF `ParakeetForCTC` semantics)."""
