"""edgeswarm: hybrid CDN-P2P content delivery."""

__version__ = "0.1.0"
