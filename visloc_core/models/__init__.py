"""Models: backbones (pretrained loading), APR models, relative-pose networks, descriptors."""
