"""Model families, training, ONNX export, INT8 quantization, gates, MLflow tracking and registry."""
