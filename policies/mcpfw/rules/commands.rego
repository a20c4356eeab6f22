# Package mcpfw.rules.commands guards tools that run shell commands.
#
# A tool counts as a command tool when its name matches one of the configured
# regular expressions (exec, shell, bash, run_command, runInTerminal, ...).
# Calls to such tools are tagged "command_execution" in the audit log, and
# denied when a string argument, at any depth, contains a shell
# metacharacter that could chain, substitute or redirect commands
# (; | & ` $( ${ > < newline). Names such as execute_sql or run_query do not
# match the default patterns: their arguments legitimately contain ';', '<'
# or '>'. Only tools/call requests are looked at: tool results are not.
#
# The decision calls effects(data.mcpfw.config.commands) for a client's
# tools/call; `obligations` and `deny` below are the same results as sets, for
# tests and tools. Helper functions live in mcpfw.lib.commands.
#
# Configuration, data.mcpfw.config.commands:
#   tool_name_patterns  regular expressions matched against the tool name;
#                       they are matched as one alternation, so an inline
#                       flag such as (?i) applies to its own pattern only
#   metacharacters      substrings refused in string arguments
#   ignored_arguments   top-level argument names not checked (free text
#                       such as "description")
package mcpfw.rules.commands

obligations contains obligation if {
	input.method == "tools/call"
	some obligation in effects(data.mcpfw.config.commands).obligations
}

deny contains reason if {
	input.method == "tools/call"
	some reason in effects(data.mcpfw.config.commands).deny
}

# effects(config) is the tag and the reasons for a client's tools/call of a
# command tool; undefined for any other message. The arguments are walked
# only for command tools.
effects(config) := {"obligations": {{"type": "tag", "tag": "command_execution"}}, "deny": reasons} if {
	input.method == "tools/call"
	input.kind == "request"
	input.direction == "client_to_server"
	# A command tool: its name matches one of the patterns. They are joined
	# into one alternation, each in its own group so that its inline flags
	# stay its own: one regex match instead of one per pattern. No patterns
	# means no command tools.
	name := input.tool.name
	is_string(name)
	patterns := config.tool_name_patterns
	patterns[0]
	regex.match(concat("", ["(?:", concat(")|(?:", patterns), ")"]), name)
	texts := data.mcpfw.lib.commands.argument_strings(config.ignored_arguments)
	reasons := {reason |
		some [path, value] in texts
		some metacharacter in config.metacharacters
		contains(value, metacharacter)
		reason := {"code": "shell_metacharacter", "message": sprintf(
			"tool %q: argument %s contains the shell metacharacter %q",
			[input.tool.name, data.mcpfw.lib.pointer(array.concat(["params", "arguments"], path)), metacharacter],
		)}
	}
}

# option_effects(config) denies a call whose revision, branch or similar argument starts
# with "-": a server that hands it to git (or another command) as is runs an option, not a
# revision ("--output=/tmp/x", "--upload-pack=..."). config.option_arguments names those
# arguments (lower case), at any depth; a file name starting with "-" is left to the
# server. The firewall lists such strings in input.resources.dashed, so nothing is walked
# here: this runs on every call.
option_effects(config) := {"deny": reasons} if {
	reasons := {reason |
		some ref in object.get(input.resources, "dashed", [])
		lower(ref.key) in config.option_arguments
		reason := {"code": "option_injection", "message": sprintf(
			"tool %q: argument %s starts with '-' (read as an option, not a value)",
			[input.tool.name, ref.pointer],
		)}
	}
}
