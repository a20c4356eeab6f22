# Package mcpfw_test.filesystem tests mcpfw.rules.filesystem: root
# confinement (including the "/data" vs "/data2" prefix trap and the use of
# canonical rather than raw paths) and the credential-file block list.
package mcpfw_test.filesystem

import data.mcpfw.rules.filesystem
import data.mcpfw_test.inputs

denials(inp) := {reason.code | some reason in filesystem.deny with input as inp}

allowed(inp) if count(denials(inp)) == 0

# -- roots ------------------------------------------------------------------

test_path_inside_root_allowed if {
	allowed(inputs.file_call("/data/project/a.txt", "/data/project/a.txt", ["/data"]))
}

test_root_itself_allowed if {
	allowed(inputs.file_call("/data", "/data", ["/data"]))
}

test_path_outside_root_denied if {
	denials(inputs.file_call("/etc/passwd", "/etc/passwd", ["/data"])) == {"path_outside_roots"}
}

test_sibling_with_common_prefix_denied if {
	denials(inputs.file_call("/data2/x.txt", "/data2/x.txt", ["/data"])) == {"path_outside_roots"}
	denials(inputs.file_call("/data2", "/data2", ["/data"])) == {"path_outside_roots"}
	denials(inputs.file_call("/database/x", "/database/x", ["/data/"])) == {"path_outside_roots"}
}

test_root_with_trailing_slash if {
	allowed(inputs.file_call("/data/x.txt", "/data/x.txt", ["/data/"]))
	allowed(inputs.file_call("/data", "/data", ["/data/"]))
	not allowed(inputs.file_call("/data2/x.txt", "/data2/x.txt", ["/data/"]))
}

test_root_given_as_file_uri if {
	allowed(inputs.file_call("/data/x.txt", "/data/x.txt", ["file:///data"]))
	not allowed(inputs.file_call("/data2/x.txt", "/data2/x.txt", ["file:///data"]))
}

test_filesystem_root_allows_everything if {
	allowed(inputs.file_call("/srv/app/x", "/srv/app/x", ["/"]))
}

test_any_of_several_roots if {
	allowed(inputs.file_call("/srv/b/x", "/srv/b/x", ["/srv/a", "/srv/b"]))
	not allowed(inputs.file_call("/srv/c/x", "/srv/c/x", ["/srv/a", "/srv/b"]))
}

test_no_roots_means_no_confinement if {
	allowed(inputs.file_call("/srv/anything", "/srv/anything", []))
}

test_extra_roots_widen_server_roots if {
	inp := inputs.file_call("/srv/shared/x", "/srv/shared/x", ["/data"])
	denials(inp) == {"path_outside_roots"}
	allowed(inp) with data.mcpfw.config.filesystem.extra_roots as ["/srv/shared"]
}

test_extra_roots_alone_do_not_confine if {
	allowed(inputs.file_call("/etc/hosts", "/etc/hosts", [])) with data.mcpfw.config.filesystem.extra_roots as ["/srv"]
}

test_canonical_path_is_checked_not_raw if {
	# "../" and %-encoded traversal are resolved by the firewall before the
	# policy runs; the raw form must not matter.
	denials(inputs.file_call("/data/../etc/passwd", "/etc/passwd", ["/data"])) == {"path_outside_roots"}
	denials(inputs.file_call("/data/%2e%2e/etc/passwd", "/etc/passwd", ["/data"])) == {"path_outside_roots"}
	allowed(inputs.file_call("/etc/../data/x.txt", "/data/x.txt", ["/data"]))
}

test_symlink_target_is_checked if {
	denials(inputs.file_call("/data/link", "/var/lib/secret.db", ["/data"])) == {"path_outside_roots"}
}

test_one_bad_path_among_many_denied if {
	inp := inputs.with_roots(
		inputs.with_paths(inputs.tool_call("copy", {"from": "/data/a", "to": "/tmp/a"}), [
			inputs.path_ref("/params/arguments/from", "/data/a", "/data/a"),
			inputs.path_ref("/params/arguments/to", "/tmp/a", "/tmp/a"),
		]),
		["/data"],
	)
	denials(inp) == {"path_outside_roots"}
}

test_resources_read_is_checked if {
	inp := inputs.with_roots(
		inputs.with_paths(
			inputs.request("resources/read", {"uri": "file:///etc/passwd"}),
			[inputs.path_ref("/params/uri", "file:///etc/passwd", "/etc/passwd")],
		),
		["/data"],
	)
	denials(inp) == {"path_outside_roots"}
}

test_other_methods_not_checked if {
	inp := inputs.with_roots(
		inputs.with_paths(
			inputs.request("prompts/get", {"name": "p"}),
			[inputs.path_ref("/params/arguments/f", "/etc/passwd", "/etc/passwd")],
		),
		["/data"],
	)
	allowed(inp)
}

test_responses_not_checked if {
	inp := inputs.with_roots(
		inputs.with_paths(inputs.tool_result("read_file", {"path": "/etc/passwd"}, {"content": []}), [
			inputs.path_ref("/params/arguments/path", "/etc/passwd", "/etc/passwd"),
		]),
		["/data"],
	)
	allowed(inp)
}

test_missing_canonical_path_denied if {
	inp := inputs.with_paths(inputs.tool_call("read_file", {"path": "x"}), [{"pointer": "/params/arguments/path", "raw": "x"}])
	denials(inp) == {"path_unresolved"}
}

# -- credential files -----------------------------------------------------------

secret(path) if "secret_file" in denials(inputs.file_call(path, path, []))

test_ssh_directory_denied if {
	secret("/home/alice/.ssh/id_rsa")
	secret("/home/alice/.ssh/config")
	secret("/home/alice/.ssh/known_hosts")
	secret("/home/alice/.ssh")
	secret("/root/.ssh/authorized_keys")
}

test_private_key_names_denied_anywhere if {
	secret("/data/backup/id_rsa")
	secret("/data/backup/id_ed25519")
	secret("/tmp/id_ecdsa_old")
}

test_cloud_credentials_denied if {
	secret("/home/alice/.aws/credentials")
	secret("/home/alice/.aws/config")
	secret("/home/alice/.azure/accessTokens.json")
	secret("/home/alice/.config/gcloud/credentials.db")
	secret("/home/alice/.config/gcloud/application_default_credentials.json")
	secret("/home/alice/.kube/config")
	secret("/home/alice/.docker/config.json")
}

test_tool_credentials_denied if {
	secret("/home/alice/.netrc")
	secret("/home/alice/.pgpass")
	secret("/home/alice/.git-credentials")
	secret("/home/alice/.npmrc")
	secret("/home/alice/.pypirc")
	secret("/home/alice/.gnupg/private-keys-v1.d/x.key")
}

test_system_secrets_denied if {
	secret("/etc/shadow")
	secret("/etc/gshadow")
	secret("/etc/sudoers")
	secret("/etc/sudoers.d/admins")
	secret("/etc/ssl/private/server.key")
}

test_key_files_and_env_files_denied if {
	secret("/data/certs/server.key")
	secret("/data/certs/server.pem")
	secret("/data/certs/client.p12")
	secret("/data/app/.env")
	secret("/data/app/.env.production")
	secret("/data/app/.env.local")
}

test_credential_files_matched_case_insensitively if {
	secret("/home/alice/.SSH/ID_RSA")
	secret("/data/certs/Server.PEM")
	secret("/data/app/.ENV")
}

test_credential_files_denied_even_inside_roots if {
	denials(inputs.file_call("/data/.env", "/data/.env", ["/data"])) == {"secret_file"}
}

test_secret_reached_through_traversal_denied if {
	secret_denied := denials(inputs.file_call("/data/../home/alice/.ssh/id_rsa", "/home/alice/.ssh/id_rsa", []))
	secret_denied == {"secret_file"}
}

test_raw_name_that_resolves_elsewhere_allowed if {
	allowed(inputs.file_call("/data/.ssh/../notes.txt", "/data/notes.txt", []))
}

test_ordinary_files_allowed if {
	every path in [
		"/data/README.md",
		"/data/src/keys.py",
		"/data/monkey",
		"/data/docs/environment.md",
		"/data/app/.env.example",
		"/data/app/.envrc",
		"/data/public/id_rsa.pub",
		"/data/notes/ssh-setup.md",
		"/etc/ssl/certs/ca-certificates.pem",
		"/etc/hosts",
		"/etc/passwd",
	] {
		allowed(inputs.file_call(path, path, []))
	}
}

test_secret_file_lists_are_lower_case if {
	lists := object.remove(data.mcpfw.config.filesystem.secret_files, ["prefilter"])
	every _, entries in lists {
		every entry in entries {
			entry == lower(entry)
		}
	}
}

# If this fails after an edit of the secret_files lists, set
# data.mcpfw.config.filesystem.secret_files.prefilter to the value of
# data.mcpfw.lib.filesystem.prefilter(data.mcpfw.config.filesystem.secret_files).
test_prefilter_matches_the_lists if {
	lists := data.mcpfw.config.filesystem.secret_files
	lists.prefilter == data.mcpfw.lib.filesystem.prefilter(lists)
}

test_prefilter_escapes_regex_metacharacters if {
	lists := {"names": [".a+b"], "name_prefixes": ["x(y"], "extensions": [], "directories": ["/d$/"], "path_suffixes": ["/s[1]"]}
	data.mcpfw.lib.filesystem.prefilter(lists) == `\.a\+b|x\(y|/d\$/|/s\[1\]`
}

test_secret_check_is_skipped_when_the_prefilter_does_not_match if {
	# A stale prefilter hides a credential file: the lists alone do not decide.
	inp := inputs.file_call("/home/u/.netrc", "/home/u/.netrc", [])
	"secret_file" in denials(inp)
	not "secret_file" in denials(inp) with data.mcpfw.config.filesystem.secret_files.prefilter as "no-such-file"
}

test_requests_without_paths_are_not_checked if {
	inp := inputs.with_roots(inputs.tool_call("read_file", {"path": "/etc/passwd"}), ["/data"])
	allowed(inp)
	inputs.clean_allow(inp)
}

test_directories_end_with_slash if {
	every directory in data.mcpfw.config.filesystem.secret_files.directories {
		endswith(directory, "/")
	}
}

# -- more references than the firewall extracts ------------------------------

test_truncated_reference_list_refused_unchecked if {
	inp := object.union(inputs.file_call("/data/a.txt", "/data/a.txt", ["/data"]), {"resources": {"truncated": true}})
	denials(inp) == {"paths_unchecked"}
}

test_truncated_without_paths_still_reaches_the_filesystem_topic if {
	base := inputs.file_call("/data/a.txt", "/data/a.txt", ["/data"])
	inp := object.union(base, {"resources": {"paths": [], "urls": [], "truncated": true}})
	decision := data.mcpfw.decision with input as inp
	not decision.allow
	[reason.code | some reason in decision.reasons] == ["paths_unchecked"]
}

test_every_reading_of_a_relative_path_is_checked if {
	# "notes.txt" read from the firewall's directory is inside the root; the server may
	# read it from its own directory argument, outside it (or as a credential file).
	inp := inputs.file_call("notes.txt", "/data/notes.txt", ["/data"])
	allowed(inp)
	outside := json.patch(inp, [{"op": "add", "path": "/resources/paths/0/alternatives", "value": ["/srv/notes.txt"]}])
	denials(outside) == {"path_outside_roots"}
	secret := json.patch(inp, [{"op": "add", "path": "/resources/paths/0/alternatives", "value": ["/data/.ssh/id_rsa"]}])
	denials(secret) == {"secret_file"}
	inside := json.patch(inp, [{"op": "add", "path": "/resources/paths/0/alternatives", "value": ["/data/sub/notes.txt"]}])
	allowed(inside)
}
