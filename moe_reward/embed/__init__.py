"""Stage 2, embed: a frozen backbone turns pairs into features (`features.PairFeatures`, the only reader and
writer of features files), through an on-disk cache; ONNX Runtime and Ray engines."""
