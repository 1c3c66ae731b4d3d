"""moe-reward-lens: sparse Mixture-of-Experts reward models you can see into."""

__version__ = "0.1.0"
