# Package mcpfw.lib.commands holds the helpers of mcpfw.rules.commands.
#
# They are functions that receive their configuration as arguments: called
# from the decision they read no data, and regorus 0.13 loses a module's
# imports inside a function called from another module.
package mcpfw.lib.commands

# argument_strings(ignored) is [path, string] for every string in the tool
# arguments, at any depth, outside the top-level arguments named in ignored.
# The walk is done once here, apart from the loop over metacharacters.
argument_strings(ignored) := {[path, value] |
	walk(input.tool.arguments, [path, value])
	is_string(value)
	count(path) > 0
	not path[0] in ignored
}
