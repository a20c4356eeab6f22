# Package mcpfw.rules.filesystem keeps file access inside the configured roots
# and away from well-known credential files.
#
# It checks the file arguments the firewall extracted from a request
# (input.resources.paths) and only ever their canonical form: absolute,
# %-escapes decoded, "." and ".." resolved, symlinks resolved for local
# servers. Tricks such as "/data/../etc/shadow" or "%2e%2e" in the raw
# argument therefore cannot get around it. The helpers live in
# mcpfw.lib.filesystem.
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
package mcpfw.rules.filesystem

# Helpers are imported one by one: regorus evaluates a whole package when a
# rule is reached through an imported package (pkg.rule).
import data.mcpfw.lib.filesystem.checked_request
import data.mcpfw.lib.filesystem.confined
import data.mcpfw.lib.filesystem.has_canonical
import data.mcpfw.lib.filesystem.inside_roots
import data.mcpfw.lib.filesystem.secret_file

deny contains {"code": "path_unresolved", "message": msg} if {
	checked_request
	some ref in input.resources.paths
	not has_canonical(ref)
	msg := sprintf("file argument %v has no canonical path", [object.get(ref, "pointer", "?")])
}

deny contains {"code": "path_outside_roots", "message": msg} if {
	confined
	some ref in input.resources.paths
	is_string(ref.canonical)
	not inside_roots(ref.canonical)
	msg := sprintf("file argument %v: %q is outside the allowed roots", [ref.pointer, ref.canonical])
}

deny contains {"code": "secret_file", "message": msg} if {
	checked_request
	some ref in input.resources.paths
	is_string(ref.canonical)
	secret_file(ref.canonical)
	msg := sprintf("file argument %v: access to %q is blocked (credential file)", [ref.pointer, ref.canonical])
}
