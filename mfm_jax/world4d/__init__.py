"""The 4D scene of dynamic Gaussians and its language edits (MorphoSim).

``commands``: instruction text -> (operation, target, arguments), rule-based or pluggable.
``scene``: the fixed-capacity Gaussian state (alive mask), densify / prune into dead slots,
depth back-projection initialisation.
``edits``: select Gaussians by feature similarity to a text query; delete / extract / recolour /
redirect.
"""
