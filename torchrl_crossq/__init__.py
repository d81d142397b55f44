"""CrossQ (Bhatt et al., ICLR 2024) as composable TorchRL components."""
