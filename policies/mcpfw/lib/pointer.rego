# Package mcpfw.lib holds helpers shared by the rule packages.
package mcpfw.lib

# pointer(path) is the RFC 6901 JSON pointer for a path as produced by
# walk(), e.g. ["content", 0, "text"] -> "/content/0/text".
pointer(path) := concat("", [concat("/", ["", escape(segment)]) | some segment in path])

# escape(segment) applies the RFC 6901 escapes. "~" must be escaped before
# "/" so that the "~1" produced for "/" is not escaped again.
escape(segment) := replace(replace(sprintf("%v", [segment]), "~", "~0"), "/", "~1")
