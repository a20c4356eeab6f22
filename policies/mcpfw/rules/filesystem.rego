# Package mcpfw.rules.filesystem keeps file access inside the configured roots
# and away from well-known credential files.
#
# It checks the file arguments the firewall extracted from a client request
# (input.resources.paths; input.resources.truncated when there were more than
# it extracts, which is refused as paths_unchecked) and only ever their
# canonical form and alternatives: absolute, "." and ".." resolved, read
# undecoded and %-decoded, ".." taken before and after symlinks (resolved for
# local servers), file: URLs as URL parsers read them. Tricks such as
# "/data/../etc/shadow", "%2e%2e", "%2f" or "link/.." in the raw argument
# therefore cannot get around it. Responses are never checked.
#
# The decision calls effects(data.mcpfw.config.filesystem) for requests that
# name files; `deny` below is the same result as a set, for tests and tools.
# Helper functions live in mcpfw.lib.filesystem.
#
# Configuration, data.mcpfw.config.filesystem:
#   methods       request methods whose file arguments are checked
#   extra_roots   roots allowed in addition to input.server.roots. Confinement
#                 applies to servers that have roots configured; extra roots
#                 widen it but do not switch it on by themselves.
#   secret_files  how credential files are recognised. Entries must be lower
#                 case: they are compared with the lower-cased canonical path.
#                   names               exact file names (".netrc")
#                   name_prefixes       file name prefixes ("id_rsa")
#                   extensions          file name endings (".pem")
#                   directories         a directory and everything below it,
#                                       as path segments with a trailing
#                                       slash ("/.ssh/")
#                   path_suffixes       path endings ("/.kube/config")
#                   allowed_names       exceptions to names/prefixes/extensions
#                   allowed_extensions  idem (".pub": public keys are fine)
#                   allowed_prefixes    directories never treated as secret
#                                       (public CA certificate stores)
#                   prefilter           every entry of names, name_prefixes,
#                                       extensions, directories and
#                                       path_suffixes, regex-escaped, joined
#                                       with "|", in that order. It lets one
#                                       cheap match clear an ordinary path.
#                                       After editing those lists, regenerate
#                                       it (the test
#                                       test_prefilter_matches_the_lists
#                                       fails until then and shows how).
package mcpfw.rules.filesystem

deny contains reason if {
	some reason in effects(data.mcpfw.config.filesystem).deny
}

# effects(config) is {"deny": reasons} for a client request of one of
# config.methods; undefined for any other message.
effects(config) := {"deny": reasons} if {
	input.direction == "client_to_server"
	input.kind == "request"
	input.method in config.methods
	paths := input.resources.paths
	reasons := {reason |
		# The firewall stopped extracting: arguments it never canonicalised
		# must not pass as checked.
		input.resources.truncated == true
		reason := {"code": "paths_unchecked", "message": "the request names more files and URLs than the firewall checks; refused unchecked"}
	} | {reason |
		some ref in paths
		not is_string(object.get(ref, "canonical", null))
		reason := {"code": "path_unresolved", "message": sprintf("file argument %v has no canonical path", [object.get(ref, "pointer", "?")])}
	} | {reason |
		# Confinement applies when the server has roots. Roots are compared
		# as whole path segments: "/data2" is not inside "/data" because
		# "/data2/" does not start with "/data/", while "/data" itself is. A
		# root given as a file:// URI is accepted too; "/data/" and "/data"
		# are the same root; the root "/" contains every absolute path.
		input.server.roots[0]
		prefixes := {concat("", [trim_right(trim_prefix(root, "file://"), "/"), "/"]) |
			some root in array.concat(input.server.roots, config.extra_roots)
			is_string(root)
			root != ""
		}
		some ref in paths
		is_string(ref.canonical)
		some canonical in readings(ref)
		not strings.any_prefix_match(concat("", [canonical, "/"]), prefixes)
		reason := {"code": "path_outside_roots", "message": sprintf("file argument %v: %q is outside the allowed roots", [ref.pointer, canonical])}
	} | {reason |
		some ref in paths
		is_string(ref.canonical)
		some canonical in readings(ref)
		path := lower(canonical)
		# One literal match clears an ordinary path; the lists decide the rest.
		regex.match(config.secret_files.prefilter, concat("", [path, "/"]))
		data.mcpfw.lib.filesystem.secret_file(path, config.secret_files)
		reason := {"code": "secret_file", "message": sprintf("file argument %v: access to %q is blocked (credential file)", [ref.pointer, canonical])}
	}
}

# Every place a file argument may name: a relative path is read from the firewall's working
# directory (canonical) and from each directory the server may resolve it against
# (alternatives: the server's directory arguments, the roots); each reading must pass.
readings(ref) := array.concat([ref.canonical], [alt | some alt in object.get(ref, "alternatives", []); is_string(alt)])
