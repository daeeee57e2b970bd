"""Off the loop: the offline experiment, scenario generators and the demo's stream.

Nothing in the loop (``compass.core``, ``streams``, ``workers``) imports this package.
"""
