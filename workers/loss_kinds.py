"""The named choices of the loss (KD divergences, feature normalisations).

Pure python, no torch: the driver's config validation, imported at every CLI start, and the search
spaces read them from here without loading torch (~1 s).
"""

KD_KINDS = ("forward_kl", "reverse_kl", "jsd")
FEATURE_NORMS = ("none", "layernorm", "std", "cosine")
