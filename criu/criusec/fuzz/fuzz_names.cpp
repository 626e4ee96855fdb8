/*
 * libFuzzer target: the image names a manifest lists (untrusted until the
 * manifest authenticates, and chosen by any key holder after): a pattern
 * and a name, split at the first NUL, through criusec_name_matches().
 * Whatever matches must be a plain file name.
 */
#include <cstdlib>
#include <cstring>
#include <string>

#include "criusec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::string in(reinterpret_cast<const char *>(data), size);
	size_t nul = in.find('\0');
	std::string pattern = nul == std::string::npos ? in : in.substr(0, nul);
	std::string name = nul == std::string::npos ? in : in.substr(nul + 1);
	if (name.find('\0') != std::string::npos)
		name.resize(name.find('\0'));
	if (criusec_name_matches(pattern.c_str(), name.c_str())) {
		if (name.empty() || name.size() > 255 || name == "." || name == ".." ||
		    name.find('/') != std::string::npos)
			abort();
	}
	return 0;
}
