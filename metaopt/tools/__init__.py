"""The measurement tools behind `metaopt compare`, `metaopt bench` and `metaopt scale`.

They use the core and the training machinery; neither of those imports them.
"""
