/*
 * Status / Result: error values that carry an errno and a message.
 *
 * The engine never throws for expected failures (bad input, failed
 * authentication, I/O errors); those travel as [[nodiscard]] values up to
 * the C layer, which turns them into a negative errno and
 * criusec_last_error().  Only std::bad_alloc may be thrown inside.
 */
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

namespace criusec {

class [[nodiscard]] Status {
public:
	Status() noexcept = default; /* success */

	/* err is a positive errno value; 0 would mean success, so it is mapped to EIO. */
	static Status error(int err, std::string msg)
	{
		Status s;
		s.err_ = err > 0 ? err : EIO;
		s.msg_ = std::move(msg);
		return s;
	}

	bool ok() const noexcept { return err_ == 0; }
	int err() const noexcept { return err_; }
	const std::string &message() const noexcept { return msg_; }

	/*
	 * "what: message", for context added on the way up; once only, so a
	 * path an inner layer already named is not repeated.
	 */
	Status with_context(const std::string &what) &&
	{
		if (!ok() && msg_.compare(0, what.size() + 2, what + ": ") != 0)
			msg_ = what + ": " + msg_;
		return std::move(*this);
	}

private:
	int err_ = 0;
	std::string msg_;
};

/* Convenience constructors for the error classes the engine uses. */
inline Status invalid_argument(std::string msg) { return Status::error(EINVAL, std::move(msg)); }
inline Status bad_data(std::string msg) { return Status::error(EBADMSG, std::move(msg)); }
inline Status unsupported(std::string msg) { return Status::error(EOPNOTSUPP, std::move(msg)); }
/* A policy or trust refusal: the checkpoint is intact but not accepted. */
inline Status rejected(std::string msg) { return Status::error(EKEYREJECTED, std::move(msg)); }

template <typename T> class [[nodiscard]] Result {
public:
	Result(T value) : value_(std::move(value)) {}
	Result(Status status) : status_(std::move(status))
	{
		/* A Result built from a success Status would hold nothing. */
		if (status_.ok())
			status_ = Status::error(EIO, "internal error: empty result");
	}

	bool ok() const noexcept { return value_.has_value(); }
	T &value() & { return *value_; }
	const T &value() const & { return *value_; }
	T &&value() && { return std::move(*value_); }
	const Status &status() const & { return status_; }
	Status &&status() && { return std::move(status_); }

private:
	std::optional<T> value_;
	Status status_;
};

} /* namespace criusec */

/* Propagate a failed Status. */
#define CRIUSEC_TRY(expr)                                          \
	do {                                                       \
		if (::criusec::Status criusec_st_ = (expr); !criusec_st_.ok()) \
			return criusec_st_;                        \
	} while (0)
