# Package mcpfw.lib.filesystem holds the helpers of mcpfw.rules.filesystem
# (root confinement and credential-file recognition). Helpers live outside
# mcpfw.rules because the decision visits every rule of every package there.
package mcpfw.lib.filesystem

# Helpers reach configuration through a local rule, not an import: regorus
# 0.13 loses a module's imports inside a function called from another module.
config := data.mcpfw.config.filesystem

# The message is a request whose file arguments are checked.
checked_request if {
	input.direction == "client_to_server"
	input.kind == "request"
	input.method in config.methods
}

# The request is subject to root confinement.
confined if {
	checked_request
	count(input.server.roots) > 0
}

# The roots file arguments must stay in: the server's roots and the
# configured extra roots.
roots contains root if {
	confined
	some root in array.concat(input.server.roots, config.extra_roots)
	is_string(root)
	root != ""
}

has_canonical(ref) if is_string(ref.canonical)

inside_roots(path) if path in _root_paths

inside_roots(path) if strings.any_prefix_match(path, _root_prefixes)

# Roots are compared as whole path segments: "/data2" is not inside "/data".
# A root given as a file:// URI is accepted too. "/data/" and "/data" are
# the same root; the root "/" contains every absolute path.
_root_paths := {_trimmed(root) | some root in roots}

_root_prefixes := {concat("", [_trimmed(root), "/"]) | some root in roots}

_trimmed(root) := trim_right(trim_prefix(root, "file://"), "/")

# secret_file(canonical) holds for well-known credential files.
secret_file(canonical) if {
	path := lower(canonical)
	_secret_path(path)
	not strings.any_prefix_match(path, config.secret_files.allowed_prefixes)
}

_secret_path(path) if {
	name := _basename(path)
	_secret_name(name)
	not _allowed_name(name)
}

_secret_path(path) if strings.any_suffix_match(path, config.secret_files.path_suffixes)

# Directories end with "/": "/.ssh/" matches "/home/u/.ssh" and what is below.
_secret_path(path) if {
	dir_path := concat("", [path, "/"])
	some directory in config.secret_files.directories
	contains(dir_path, directory)
}

_secret_name(name) if name in config.secret_files.names

_secret_name(name) if strings.any_prefix_match(name, config.secret_files.name_prefixes)

_secret_name(name) if strings.any_suffix_match(name, config.secret_files.extensions)

_allowed_name(name) if name in config.secret_files.allowed_names

_allowed_name(name) if strings.any_suffix_match(name, config.secret_files.allowed_extensions)

_basename(path) := name if {
	parts := split(path, "/")
	name := parts[count(parts) - 1]
}
