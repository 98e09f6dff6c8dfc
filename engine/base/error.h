// sparrow::Error and the checking macros used everywhere (library code throws, apps print one line).
// An Error's message already says what failed and where (file, shape, option); what() is that line.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace sparrow {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// str("shape ", n, "x", c) builds a message from streamable pieces.
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  return os.str();
}

[[noreturn]] void throw_error(const char* file, int line, const std::string& msg);

}  // namespace sparrow

// SPARROW_CHECK(cond, pieces...): throws sparrow::Error("<pieces> [file:line]") when cond is false.
#define SPARROW_CHECK(cond, ...)                                                   \
  do {                                                                             \
    if (!(cond)) ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str(__VA_ARGS__)); \
  } while (0)

#define SPARROW_FAIL(...) ::sparrow::throw_error(__FILE__, __LINE__, ::sparrow::str(__VA_ARGS__))
