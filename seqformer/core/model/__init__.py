"""The models: ReformerLM (lm.py), ReformerClassifier (classifier.py), ReformerEncDec
(encdec.py) and PrefixLM (prefix_lm.py)."""
