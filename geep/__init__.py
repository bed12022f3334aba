"""geep: a reproduction suite for GEEP (Li et al., Frontiers of Computer Science 2024).

Data flows one way: dataset -> tokenizer -> method.train -> checkpoint -> method.predict
-> metrics -> results -> report.
"""

__version__ = "0.1.0"
