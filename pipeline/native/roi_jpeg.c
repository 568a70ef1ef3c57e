/* Region-of-interest JPEG decoding with libjpeg-turbo, for the torch backend (loaded with ctypes, see
 * pipeline/roi_jpeg.py).
 *
 * Pillow always decodes the whole image, but a RandomResizedCrop keeps on average about half of it. libjpeg-turbo
 * can do less work for the rest:
 *   - rows below the window are never read: decoding stops after the window's last row;
 *   - rows above it are skipped with jpeg_skip_scanlines (entropy-decoded, which the format requires to find
 *     where the next block starts, but not inverse-transformed, upsampled or colour-converted);
 *   - columns outside it are cut with jpeg_crop_scanline (again entropy-decoded only);
 *   - the DCT-domain downscale (scale 1/2, 1/4, 1/8), as Pillow's Image.draft, where the window allows it.
 * DALI's CPU decoder makes the same use of libjpeg-turbo for its ROI decode.
 *
 * Errors never exit the process: the error manager jumps back and the message is returned to the caller. A
 * premature end of data is an error here (Pillow calls it a truncated image), other libjpeg warnings are not
 * (Pillow ignores them too), so this decoder accepts exactly the files the Pillow decoder accepts.
 *
 * Built by tools/setup_env.sh: cc -O2 -shared -fPIC roi_jpeg.c -ljpeg. No Python headers needed.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#define ROI_MESSAGE_LENGTH 200

typedef struct {
  struct jpeg_error_mgr base;
  jmp_buf jump;
  char *message;
} error_manager;

static void fail(j_common_ptr cinfo) {
  error_manager *err = (error_manager *)cinfo->err;
  char text[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, text);
  snprintf(err->message, ROI_MESSAGE_LENGTH, "%s", text);
  longjmp(err->jump, 1);
}

static void on_message(j_common_ptr cinfo, int level) {
  /* level -1 is a warning about corrupt data; of those only a premature end of the data is fatal (libjpeg
     would otherwise fill the rest of the image with grey and carry on). */
  if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) fail(cinfo);
}

static void prepare(struct jpeg_decompress_struct *cinfo, error_manager *err, char *message) {
  cinfo->err = jpeg_std_error(&err->base);
  err->base.error_exit = fail;
  err->base.emit_message = on_message;
  err->message = message;
  message[0] = '\0';
}

/* Width and height of the JPEG in `data`. Returns 0, or -1 with `message` set. */
int roi_jpeg_size(const unsigned char *data, unsigned long size, int *width, int *height, char *message) {
  struct jpeg_decompress_struct cinfo;
  error_manager err;
  prepare(&cinfo, &err, message);
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  *width = (int)cinfo.image_width;
  *height = (int)cinfo.image_height;
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

/* The work of roi_jpeg_decode once the error handler is armed (a separate frame, so that nothing it modifies
 * is read after a longjmp). */
static int decode_window(struct jpeg_decompress_struct *cinfo, int scale_denom, int left, int top, int columns,
                         int rows, unsigned char *out, unsigned long capacity, int *result, char *message) {
  JDIMENSION x, width, end;
  JSAMPROW row_pointers[16];
  jpeg_read_header(cinfo, TRUE);
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    snprintf(message, ROI_MESSAGE_LENGTH, "CMYK/YCCK JPEG");
    return -2;
  }
  cinfo->out_color_space = JCS_RGB;
  cinfo->scale_num = 1;
  cinfo->scale_denom = (unsigned int)scale_denom;
  jpeg_start_decompress(cinfo);
  result[2] = (int)cinfo->output_width;
  result[3] = (int)cinfo->output_height;
  if (left < 0) left = 0;
  if (top < 0) top = 0;
  if (left >= (int)cinfo->output_width) left = (int)cinfo->output_width - 1;
  if (top >= (int)cinfo->output_height) top = (int)cinfo->output_height - 1;
  if (columns < 1) columns = 1;
  if (rows < 1) rows = 1;
  if (left + columns > (int)cinfo->output_width) columns = (int)cinfo->output_width - left;
  if (top + rows > (int)cinfo->output_height) rows = (int)cinfo->output_height - top;
  x = (JDIMENSION)left;
  width = (JDIMENSION)columns;
  if (x > 0 || width < cinfo->output_width) jpeg_crop_scanline(cinfo, &x, &width);
  result[0] = (int)x;
  result[1] = (int)width;
  result[4] = top;
  result[5] = rows;
  if ((unsigned long)width * 3 * (unsigned long)rows > capacity) return 1;
  if (top > 0) jpeg_skip_scanlines(cinfo, (JDIMENSION)top);
  end = (JDIMENSION)(top + rows);
  while (cinfo->output_scanline < end) {
    JDIMENSION first = cinfo->output_scanline, count = end - first, i;
    if (count > 16) count = 16;
    for (i = 0; i < count; i++) row_pointers[i] = out + (unsigned long)(first - top + i) * width * 3;
    if (jpeg_read_scanlines(cinfo, row_pointers, count) == 0) {
      snprintf(message, ROI_MESSAGE_LENGTH, "the decoder returned no rows at row %u", first);
      return -1;
    }
  }
  return 0;
}

/* Decodes rows [top, top + rows) and at least columns [left, left + columns) of the image scaled by
 * 1/scale_denom (1, 2, 4 or 8) as packed RGB into `out` (capacity bytes); the window is first clamped to the
 * scaled image. result[0..5]: the first decoded column (the iMCU boundary at or left of `left`), the decoded
 * width (>= the requested columns), the scaled image's width and height, and the first row and row count
 * decoded. Returns 0; 1 when `out` is too small (nothing decoded; result[1] * result[5] * 3 bytes are needed);
 * -2 for a CMYK or YCCK JPEG (left to the caller's other decoder); or -1 with `message` set. The rows below the
 * window are never decoded. */
int roi_jpeg_decode(const unsigned char *data, unsigned long size, int scale_denom, int left, int top, int columns,
                    int rows, unsigned char *out, unsigned long capacity, int *result, char *message) {
  struct jpeg_decompress_struct cinfo;
  error_manager err;
  int status;
  prepare(&cinfo, &err, message);
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  status = decode_window(&cinfo, scale_denom, left, top, columns, rows, out, capacity, result, message);
  jpeg_abort_decompress(&cinfo);  /* stop here: the rows below the window are not needed */
  jpeg_destroy_decompress(&cinfo);
  return status;
}
