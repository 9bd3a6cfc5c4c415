"""The 4D scene of dynamic Gaussians and its language edits (MorphoSim).

``commands``: instruction text -> (operation, target, arguments), rule-based or pluggable.
"""
