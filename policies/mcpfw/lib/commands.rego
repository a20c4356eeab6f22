# Package mcpfw.lib.commands holds the helpers of mcpfw.rules.commands.
package mcpfw.lib.commands

# Helpers reach configuration through a local rule, not an import: regorus
# 0.13 loses a module's imports inside a function called from another module.
config := data.mcpfw.config.commands

# The tool named in the message runs shell commands.
command_tool if {
	is_string(input.tool.name)
	some pattern in config.tool_name_patterns
	regex.match(pattern, input.tool.name)
}

# The message is a client request calling a command tool.
command_call if {
	input.direction == "client_to_server"
	input.kind == "request"
	input.method == "tools/call"
	command_tool
}

# [path, string] for every checked string argument of a command call. Kept
# apart from the loop over metacharacters: in a single rule an engine may
# schedule that loop first and walk the arguments once per metacharacter.
argument_strings contains [path, value] if {
	command_call
	walk(input.tool.arguments, [path, value])
	is_string(value)
	count(path) > 0
	not path[0] in config.ignored_arguments
}
