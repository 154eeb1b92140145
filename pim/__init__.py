"""PIM: the Plug-in Module for fine-grained visual classification (FPN + weakly supervised selector + GCN
combiner) on Swin, ResNet, ViT and EfficientNet backbones. See README.md, section PIM."""
