"""Text tool-call dialects, for routes that do not use native tool calls.

The formats and their dialect ids are the original KyleCode's, so its configs
and prompts work unchanged; what differs is stated per module (byte-exact
patches, no calls read from prose).

One module per format (`pythonic`: ``<TOOL_CALL>``, `bash_block`: ``<BASH>``,
`search_replace`: SEARCH/REPLACE, `unified_diff`: fenced or raw git diffs,
`begin_patch`: ``*** Begin Patch``); `base` holds their shared result types,
`scan` dispatches between them and `catalogue` renders the prompt directive
that documents them.
"""

from kcd.agent.dialects.catalogue import render_text_catalogue
from kcd.agent.dialects.scan import FORMAT_NAMES, FORMATS, ParsedCalls, parse_text_calls

__all__ = ["FORMATS", "FORMAT_NAMES", "ParsedCalls", "parse_text_calls", "render_text_catalogue"]
