"""Apollo progressive training: depth schedule, weight-shared layers, growth, FLOPs and plots."""
