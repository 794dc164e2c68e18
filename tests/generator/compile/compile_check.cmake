# Compiles one negative-compilation case with -fsyntax-only, twice:
#   without XYMQTT_NEGATIVE (the positive control) it must compile;
#   with -DXYMQTT_NEGATIVE it must fail with a diagnostic matching EXPECT.
# Variables: COMPILER SOURCE EXPECT INCLUDES (;-list).
set(flags -std=c++17 -fsyntax-only)
foreach(dir IN LISTS INCLUDES)
  list(APPEND flags "-I${dir}")
endforeach()

execute_process(COMMAND "${COMPILER}" ${flags} "${SOURCE}" RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "positive control of ${SOURCE} does not compile:\n${out}${err}")
endif()

execute_process(COMMAND "${COMPILER}" ${flags} -DXYMQTT_NEGATIVE "${SOURCE}"
                RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rv EQUAL 0)
  message(FATAL_ERROR "${SOURCE} with XYMQTT_NEGATIVE compiles, but must not")
endif()
if(NOT "${out}${err}" MATCHES "${EXPECT}")
  message(FATAL_ERROR "${SOURCE} fails to compile, but without the expected diagnostic /${EXPECT}/:\n${out}${err}")
endif()
message(STATUS "fails to compile as expected: /${EXPECT}/ (positive control compiles)")
