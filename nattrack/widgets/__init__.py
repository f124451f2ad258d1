"""The notebooks' views: pure HTML/SVG renderers and the ipywidgets around them.

The renderers (:mod:`.render`, :mod:`.diagram`) take plain data (``conntrack
-L``/``-E`` lines, conn_json dicts, packet bytes, the TCP transition table) and
return one self-contained fragment: no JavaScript, no external CSS or fonts,
every value escaped, the same bytes for the same input, and what it shows as
``data-*`` attributes on its root element (read back with :func:`widget_state`).

The views (:mod:`.views`) wrap them in core ipywidgets, throttled and
thread-safe, for JupyterLab 4, Notebook 7 and VS Code alike; their contract
(names, ``widget``, ``state``, the ``data-*`` attributes) is documented there.
Importing the renderers does not import ipywidgets.
"""
from .diagram import (flag_index, state_diagram_svg, table_cell, tcp_transitions,
                      timeline_entries_from_table, timeline_svg)
from .render import (conntrack_table_html, event_log_html, kernel_comparison_html,
                     mode_banner_html, packet_before_after_html, widget_state)

_VIEWS = ("ConntrackTableView", "StateDiagramView", "PacketView", "TimelineView",
          "EventLogView", "ComparisonView", "ModeBanner", "Updater", "grading_mode",
          "stop_all", "MIN_INTERVAL", "step_buttons")

__all__ = ["state_diagram_svg", "tcp_transitions", "flag_index", "table_cell", "timeline_svg",
           "timeline_entries_from_table", "conntrack_table_html", "packet_before_after_html",
           "event_log_html", "kernel_comparison_html", "mode_banner_html", "widget_state",
           "ConntrackTableView", "StateDiagramView", "PacketView", "TimelineView",
           "EventLogView", "ComparisonView", "ModeBanner", "Updater", "grading_mode",
           "stop_all", "MIN_INTERVAL", "step_buttons"]


def __getattr__(name: str):
    if name in _VIEWS:                       # ipywidgets only when a view is asked for
        from . import views
        return getattr(views, name)
    raise AttributeError(f"module 'nattrack.widgets' has no attribute {name!r}")
