"""The weekly job's stages after training: embed, probe, classify, pictures, evaluate, Spark embed."""
