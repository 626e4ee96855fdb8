#include "io.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <system_error>

namespace criusec {

std::string errno_string(int err)
{
	return std::generic_category().message(err);
}

namespace {

/* A non-blocking fd reports EAGAIN: wait for it instead of failing. */
bool wait_fd(int fd, short events)
{
	struct pollfd p = {fd, events, 0};
	for (;;) {
		int rc = poll(&p, 1, -1);
		if (rc >= 0)
			return true;
		if (errno != EINTR)
			return false;
	}
}

} /* namespace */

Result<size_t> read_full(int fd, std::span<uint8_t> buf)
{
	size_t done = 0;
	while (done < buf.size()) {
		ssize_t n = read(fd, buf.data() + done, buf.size() - done);
		if (n > 0) {
			done += static_cast<size_t>(n);
			continue;
		}
		if (n == 0)
			break; /* EOF */
		int e = errno;
		if (e == EINTR)
			continue;
		if ((e == EAGAIN || e == EWOULDBLOCK) && wait_fd(fd, POLLIN))
			continue;
		return Status::error(e, "read: " + errno_string(e));
	}
	return done;
}

Status write_full(int fd, std::span<const uint8_t> buf)
{
	size_t done = 0;
	while (done < buf.size()) {
		ssize_t n = write(fd, buf.data() + done, buf.size() - done);
		if (n > 0) {
			done += static_cast<size_t>(n);
			continue;
		}
		if (n == 0)
			return Status::error(EIO, "write: no progress");
		int e = errno;
		if (e == EINTR)
			continue;
		if ((e == EAGAIN || e == EWOULDBLOCK) && wait_fd(fd, POLLOUT))
			continue;
		return Status::error(e, "write: " + errno_string(e));
	}
	return {};
}

Result<SecureBytes> read_small_file(const char *path, size_t max_size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		return Status::error(e, std::string(path) + ": " + errno_string(e));
	}
	struct FdCloser {
		int fd;
		~FdCloser() { close(fd); }
	} closer{fd};

	/* Start from st_size (0 for pipes) and grow: the size is a hint, EOF is the truth. */
	struct stat st;
	size_t cap = 4096;
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0)
		cap = std::min(static_cast<size_t>(st.st_size), max_size) + 1;
	SecureBytes buf(cap);
	size_t have = 0;
	for (;;) {
		auto n = read_full(fd, buf.span().subspan(have));
		if (!n.ok())
			return std::move(n).status().with_context(path);
		have += n.value();
		if (have > max_size)
			return invalid_argument(std::string(path) + ": file too large");
		if (have < buf.size())
			break; /* EOF */
		SecureBytes bigger(std::min(buf.size() * 2, max_size + 1));
		std::memcpy(bigger.data(), buf.data(), have);
		buf = std::move(bigger); /* the old buffer is wiped */
	}
	return SecureBytes(buf.span().first(have));
}

} /* namespace criusec */
