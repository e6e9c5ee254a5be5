"""The inference tier: a gRPC server speaking the Open Inference Protocol over the current release."""
