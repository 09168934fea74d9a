"""Analyses of the method: frequency-domain SNR (paper Fig. 2) and visualisations."""
