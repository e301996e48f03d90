"""l4e-agent: an edge data bridge from plant sensors to Lookout for Equipment inference schedulers."""

__version__ = "0.1.0"
