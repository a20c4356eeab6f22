# Package mcpfw_test.lib tests the shared helpers in mcpfw.lib.
package mcpfw_test.lib

import data.mcpfw.lib

test_pointer_of_empty_path_is_whole_document if {
	lib.pointer([]) == ""
}

test_pointer_joins_keys_and_indices if {
	lib.pointer(["result", "content", 0, "text"]) == "/result/content/0/text"
}

test_pointer_escapes_tilde_before_slash if {
	lib.pointer(["a/b", "c~d", "~1"]) == "/a~1b/c~0d/~01"
}
