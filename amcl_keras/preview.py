"""A PNG grid of original images and two augmented views of each: what the model sees."""

import numpy as np

from amcl_keras import augment, data


def preview_grid(images, augmenter, columns=None, scale=None):
    """Rows of (original | view 1 | view 2) for uint8 images `[N, H, W, C]`, as a uint8 RGB array.

    The originals are resized to the views' size; small images are enlarged (nearest neighbour)
    so that a 28×28 image stays visible. A 2-pixel white gutter separates the tiles.
    """
    floats = data.to_float_images(images)
    view1 = np.asarray(augmenter(floats, training=True))
    view2 = np.asarray(augmenter(floats, training=True))
    size = view1.shape[1]
    originals = np.asarray(data.to_float_images(images, size))
    scale = scale or max(1, 96 // size)
    rows = []
    for tiles in zip(originals, view1, view2):
        rows.append([np.clip(tile, 0, 1) for tile in tiles])
    tile_px = size * scale
    gutter = 2
    height = len(rows) * (tile_px + gutter) + gutter
    width = 3 * (tile_px + gutter) + gutter
    canvas = np.ones((height, width, 3), np.float32)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
            if tile.shape[-1] == 1:
                tile = np.repeat(tile, 3, axis=-1)
            top, left = gutter + r * (tile_px + gutter), gutter + c * (tile_px + gutter)
            canvas[top : top + tile_px, left : left + tile_px] = tile
    return (canvas * 255).round().astype(np.uint8)


def write_preview(path, images, image_size, preset="simclr", crop_scale=(0.08, 1.0)):
    """Write the grid for `images` under `preset` to a PNG file; returns the grid's shape."""
    from PIL import Image

    augmenter = augment.view_augmenter(image_size, images.shape[-1], preset, crop_scale)
    grid = preview_grid(images, augmenter)
    Image.fromarray(grid).save(path)
    return grid.shape
