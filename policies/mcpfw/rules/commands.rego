# Package mcpfw.rules.commands guards tools that run shell commands.
#
# A tool counts as a command tool when its name matches one of the configured
# regular expressions (exec, shell, bash, run_command, runInTerminal, ...).
# Calls to such tools are tagged "command_execution" in the audit log, and
# denied when a string argument, at any depth, contains a shell
# metacharacter that could chain, substitute or redirect commands
# (; | & ` $( ${ > < newline). Names such as execute_sql or run_query do not
# match the default patterns: their arguments legitimately contain ';', '<'
# or '>'. The helpers live in mcpfw.lib.commands.
#
# Configuration, data.mcpfw.config.commands:
#   tool_name_patterns  regular expressions matched against the tool name
#   metacharacters      substrings refused in string arguments
#   ignored_arguments   top-level argument names not checked (free text
#                       such as "description")
package mcpfw.rules.commands

# Helpers are imported one by one: regorus evaluates a whole package when a
# rule is reached through an imported package (pkg.rule).
import data.mcpfw.config.commands.metacharacters
import data.mcpfw.lib.commands.argument_strings
import data.mcpfw.lib.commands.command_call
import data.mcpfw.lib.pointer

obligations contains {"type": "tag", "tag": "command_execution"} if command_call

deny contains {"code": "shell_metacharacter", "message": msg} if {
	some [path, value] in argument_strings
	some metacharacter in metacharacters
	contains(value, metacharacter)
	msg := sprintf(
		"tool %q: argument %s contains the shell metacharacter %q",
		[input.tool.name, pointer(array.concat(["params", "arguments"], path)), metacharacter],
	)
}
