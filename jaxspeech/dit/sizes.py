"""Model sizes of the dit family (`configs/dit.py` starts its `model` section from them)."""

from jaxspeech.dit.model import DiTConfig

SIZES = {
    # 2-core CPU.
    "tiny": DiTConfig(backbone="dit", dim=128, depth=4, heads=4, dim_head=32, ff_mult=2, text_dim=64, conv_layers=2),
    # F5TTS_v1_Base (f5_tts/configs/F5TTS_v1_Base.yaml); its released vocab has 2545 tokens.
    "base": DiTConfig(backbone="dit", dim=1024, depth=22, heads=16, dim_head=64, ff_mult=2, text_dim=512,
                      conv_layers=4, text_num_embeds=2545),
    # E2-TTS (E2TTS_Base.yaml): the flat U-Net Transformer, no text ConvNeXt.
    "e2_tiny": DiTConfig(backbone="unett", dim=128, depth=4, heads=4, dim_head=32, ff_mult=4, text_dim=100,
                         conv_layers=0),
    "e2_base": DiTConfig(backbone="unett", dim=1024, depth=24, heads=16, dim_head=64, ff_mult=4, text_dim=100,
                         conv_layers=0, text_num_embeds=2545),
}
