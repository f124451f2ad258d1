"""nattrack's Mininet topologies: each file has a module-level ``topos`` dict.

    sudo mn --custom topologies/basic.py --topo basic        # mininet> ct, ct -E, ctdiff, trace
    sudo .venv/bin/python topologies/basic.py                 # the same, without mn
    sudo nattrack lab up --topo basic                         # the lab service
    from nattrack.lab.topologies import get_topology          # from Python

Importing a file only defines classes; nothing starts.
"""
