"""tradpal-ray: crypto-trading research and live market data on a Ray cluster."""

__version__ = "0.1.0"
