"""Pure renderers behind the notebooks' widgets: HTML and SVG strings, no ipywidgets.

Each function takes plain data (``conntrack -L``/``-E`` lines, conn_json dicts,
packet bytes, the TCP transition table) and returns one self-contained fragment:
no JavaScript, no external CSS or fonts, every value escaped, the same bytes for
the same input.  The widgets only wrap them (``ipywidgets.HTML(value=...)``).
"""
from .diagram import (state_diagram_svg, tcp_transitions, timeline_entries_from_table,
                      timeline_svg)
from .render import (conntrack_table_html, event_log_html, kernel_comparison_html,
                     packet_before_after_html)

__all__ = ["state_diagram_svg", "tcp_transitions", "timeline_svg", "timeline_entries_from_table",
           "conntrack_table_html", "packet_before_after_html", "event_log_html",
           "kernel_comparison_html"]
